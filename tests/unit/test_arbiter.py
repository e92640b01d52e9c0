"""The arbiter policy, one rule at a time."""

from gpu_orchestrator.core.policy import decide
from gpu_orchestrator.core.policy_types import Action, Gpu, ModelView, PolicyConfig, Verb

G24 = [Gpu("gpu0", 24)]
CFG = PolicyConfig(idle_ttl_s=300, max_wait_s=60, min_resident_s=30)


def resident(name, vram, gpu="gpu0", **kw):
    kw.setdefault("resident_s", 100.0)
    return ModelView(name=name, vram_gb=vram, replicas=1, placement=(gpu,), **kw)


def cold(name, vram, **kw):
    return ModelView(name=name, vram_gb=vram, **kw)


def test_cold_model_with_work_loads_where_it_fits():
    d = decide([cold("sdxl", 16, queued=3, oldest_wait_s=1)], G24, CFG)
    assert d.targets == {"sdxl": 1} and d.placements == {"sdxl": ("gpu0",)}
    assert d.reasons == ("load sdxl on gpu0: 3 queued, 24 GB free",)
    assert d.actions == (Action(Verb.load, "sdxl", ("gpu0",), text=d.reasons[0]),)


def test_two_models_that_do_not_fit_together_never_both_get_targets():
    d = decide([cold("a", 16, queued=1, oldest_wait_s=5), cold("b", 14, queued=1, oldest_wait_s=9)], G24, CFG)
    assert d.targets == {"a": 0, "b": 1}  # the older wait first
    ms = [resident("a", 16, queued=2, in_flight=1), cold("b", 14, queued=1, oldest_wait_s=59, load_s=6)]
    d = decide(ms, G24, CFG)
    assert d.targets["b"] == 0  # room is not free yet: never both resident


def test_small_models_share_a_gpu():
    d = decide([resident("sdxl", 16, queued=1, in_flight=1), cold("whisper", 4, queued=1)], G24, CFG)
    assert d.targets == {"sdxl": 1, "whisper": 1}


def test_idle_ttl_scales_to_zero():
    assert decide([resident("a", 10, idle_s=299)], G24, CFG).targets == {"a": 1}
    d = decide([resident("a", 10, idle_s=310)], G24, CFG)
    assert d.targets == {"a": 0} and d.reasons == ("scale a to zero: idle 310 s >= ttl 300 s",)
    # A per-model TTL overrides the default.
    assert decide([resident("a", 10, idle_s=20, idle_ttl_s=15)], G24, CFG).targets == {"a": 0}


def test_never_evicts_a_model_with_running_work():
    ms = [resident("a", 16, in_flight=1), cold("b", 14, queued=5, oldest_wait_s=500, max_priority=99)]
    d = decide(ms, G24, CFG)
    assert d.targets == {"a": 1, "b": 0}
    assert d.draining == {"a"}
    assert any(r.startswith("drain a (0 queued, 1 running) for b") for r in d.reasons)
    # Once its job ends, it goes; the newcomer follows when the memory is free.
    d = decide([resident("a", 16, idle_s=0.0), cold("b", 14, queued=5, oldest_wait_s=501, max_priority=99)], G24, CFG)
    assert d.targets == {"a": 0, "b": 0}
    d = decide([cold("a", 16), cold("b", 14, queued=5, oldest_wait_s=502, max_priority=99)], G24, CFG)
    assert d.targets == {"a": 0, "b": 1}


def test_stopping_replicas_still_hold_memory():
    ms = [ModelView(name="a", vram_gb=16, stopping=1, placement=("gpu0",)), cold("b", 14, queued=1)]
    assert decide(ms, G24, CFG).targets["b"] == 0


def test_idle_models_are_evicted_first_with_the_reason():
    g = [Gpu("gpu0", 32)]
    ms = [resident("whisper", 16, idle_s=310.0 - 20, queued=0), resident("llm", 12, queued=4, in_flight=1),
          cold("sdxl", 14, queued=12, oldest_wait_s=2)]
    d = decide(ms, g, CFG)
    assert d.targets["whisper"] == 0 and d.targets["llm"] == 1 and "llm" not in d.draining
    assert "evict whisper (idle 290 s) for sdxl: 12 queued, oldest waited 2 s" in d.reasons
    (evict,) = [a for a in d.actions if a.verb is Verb.evict]
    assert (evict.model, evict.for_model, evict.acting) == ("whisper", "sdxl", True)
    assert evict.concerns("sdxl") and evict.concerns("whisper") and not evict.concerns("llm")


def test_busy_model_whose_queue_empties_soonest_is_displaced_when_due():
    g = [Gpu("gpu0", 32)]
    ms = [resident("a", 16, queued=10, service_s=2.0, in_flight=1), resident("c", 12, queued=1, service_s=1.0, in_flight=1),
          cold("b", 14, queued=3, oldest_wait_s=55, load_s=6)]
    d = decide(ms, g, CFG)
    assert d.draining == {"c"} and d.targets["a"] == 1


def test_resident_model_keeps_its_batch_until_another_job_is_due():
    ms = [resident("a", 16, queued=5, in_flight=1, service_s=2), cold("b", 14, queued=1, oldest_wait_s=10, load_s=6)]
    d = decide(ms, G24, CFG)
    assert d.targets == {"a": 1, "b": 0} and not d.draining
    assert "b waits: 1 queued (oldest 10 s)" in d.reasons[0]
    assert [(a.verb, a.model, a.acting) for a in d.actions] == [(Verb.wait, "b", False)]
    # due: 50 s waited + 2 s drain + 6 s load >= 60 s
    ms[1] = cold("b", 14, queued=1, oldest_wait_s=52, load_s=6)
    assert decide(ms, G24, CFG).draining == {"a"}


def test_fresh_model_is_protected_by_min_resident():
    ms = [resident("a", 16, queued=5, in_flight=1, resident_s=5), cold("b", 14, queued=1, oldest_wait_s=80, load_s=6)]
    assert not decide(ms, G24, CFG).draining
    ms[0] = resident("a", 16, queued=5, in_flight=1, resident_s=31)
    assert decide(ms, G24, CFG).draining == {"a"}


def test_loading_model_is_never_displaced():
    ms = [ModelView(name="a", vram_gb=16, pending=1, placement=("gpu0",), queued=5),
          cold("b", 14, queued=1, oldest_wait_s=500, max_priority=50)]
    d = decide(ms, G24, CFG)
    assert d.targets == {"a": 1, "b": 0} and not d.draining


def test_higher_priority_goes_first():
    d = decide([cold("a", 16, queued=9, oldest_wait_s=30), cold("b", 14, queued=1, max_priority=5)], G24, CFG)
    assert d.targets == {"a": 0, "b": 1}
    # ... and displaces a lower-priority batch without waiting to be due
    ms = [resident("a", 16, queued=9, in_flight=1, resident_s=1), cold("b", 14, queued=1, max_priority=5)]
    d = decide(ms, G24, CFG)
    assert d.draining == {"a"} and any("higher priority" in r for r in d.reasons)


def test_pinning_and_fit_on_heterogeneous_gpus():
    gpus = [Gpu("small", 24, node_type="a10g"), Gpu("big", 80, node_type="h100")]
    d = decide([cold("llm70", 40, queued=1)], gpus, CFG)
    assert d.placements == {"llm70": ("big",)}  # fits only on the larger one
    d = decide([cold("whisper", 4, queued=1, pin="h100")], gpus, CFG)
    assert d.placements == {"whisper": ("big",)}
    d = decide([cold("whisper", 4, queued=1, pin="small")], gpus, CFG)
    assert d.placements == {"whisper": ("small",)}
    d = decide([cold("whisper", 4, queued=1)], gpus, CFG)
    assert d.placements == {"whisper": ("small",)}  # best fit keeps the big GPU's room for big models
    d = decide([cold("x", 4, queued=1, pin="tpu")], gpus, CFG)
    assert d.targets == {"x": 0} and d.reasons == ("cannot place x: no GPU matches pin 'tpu'",)
    d = decide([cold("huge", 100, queued=1)], gpus, CFG)
    assert d.targets == {"huge": 0} and "needs 100 GB" in d.reasons[0]


def test_extra_replicas_for_deep_queues_where_room_allows():
    gpus = [Gpu("g0", 24), Gpu("g1", 24)]
    d = decide([resident("a", 10, gpu="g0", queued=8, in_flight=1, max_replicas=2)], gpus, CFG)
    assert d.targets == {"a": 2} and d.placements["a"] == ("g0", "g1")
    assert d.actions == (Action(Verb.add, "a", ("g1",), text="add a a replica on g1: 8 queued"),)


def test_dispatchable():
    ms = [resident("a", 16, in_flight=1), cold("b", 14, queued=5, oldest_wait_s=500)]
    d = decide(ms, G24, CFG)
    assert not d.dispatchable(ms[0])  # draining: no new work
    assert decide([resident("a", 16, queued=1)], G24, CFG).dispatchable(resident("a", 16, queued=1))


def test_cpu_models_load_on_demand_without_gpus():
    d = decide([cold("echo", 0, queued=1)], [], CFG)
    assert d.targets == {"echo": 1} and d.reasons == ("load echo: 1 queued, needs no GPU memory",)


def test_models_no_gpu_can_hold_are_unplaceable_once_their_jobs_waited_max_wait():
    gpus = [Gpu("gpu0", 24)]
    d = decide([cold("zimage", 25, queued=2, oldest_wait_s=10)], gpus, CFG)
    assert d.unplaceable == {} and "needs 25 GB, largest allowed GPU has 24 GB" in d.reasons[0]  # not yet
    d = decide([cold("zimage", 25, queued=2, oldest_wait_s=60), cold("sdxl", 16, queued=1, oldest_wait_s=60)], gpus, CFG)
    assert d.unplaceable == {"zimage": "cannot place zimage: needs 25 GB, largest allowed GPU has 24 GB"}
    assert [(a.verb, a.model) for a in d.actions if not a.acting] == [(Verb.cannot_place, "zimage")]
    assert d.targets["sdxl"] == 1  # the others are unaffected
    d = decide([cold("whisper", 10, queued=1, oldest_wait_s=61)], [], CFG)  # a cluster without GPUs
    assert d.unplaceable == {"whisper": "cannot place whisper: no GPU in the cluster"}
    d = decide([cold("x", 4, queued=1, oldest_wait_s=61, pin="tpu")], gpus, CFG)
    assert d.unplaceable == {"x": "cannot place x: no GPU matches pin 'tpu'"}
    assert decide([cold("cpu", 0, queued=1, oldest_wait_s=99)], [], CFG).unplaceable == {}  # needs no GPU


# -- the swap budget (overload) ---------------------------------------------------------------------

def backlog_and_due_newcomer(**kw):
    """`a` resident with a backlog (its own jobs long past due), `b` cold and due: swapping costs b's
    load now and a's reload later (5 + 8 s)."""
    return [resident("a", 16, queued=40, in_flight=1, oldest_wait_s=300, service_s=2.0, load_s=8.0),
            cold("b", 14, queued=3, oldest_wait_s=70, load_s=5.0, **kw)]


def test_swapping_out_a_busy_model_needs_the_round_trip_in_credit():
    cfg = PolicyConfig(max_wait_s=60, min_resident_s=30, swap_budget=0.1, swap_window_s=300)  # cap 30 s
    d = decide(backlog_and_due_newcomer(), G24, cfg, credit={"gpu0": 12.9})
    assert d.targets == {"a": 1, "b": 0} and not d.draining
    (wait,) = d.actions
    assert wait.verb is Verb.wait and wait.text == (
        "b waits: 3 queued (oldest 70 s), overloaded: swap budget on gpu0 has 12.9 s of the 13.0 s this swap costs "
        "(loads held to 10% of GPU time)")
    d = decide(backlog_and_due_newcomer(), G24, cfg, credit={"gpu0": 13.0})
    assert d.draining == {"a"} and d.actions[0].gpus == ("gpu0",) and d.actions[0].for_model == "b"


def test_a_full_bucket_pays_for_any_one_swap():
    cfg = PolicyConfig(max_wait_s=60, min_resident_s=30, swap_budget=0.1, swap_window_s=100)  # cap 10 s < 13 s
    assert decide(backlog_and_due_newcomer(), G24, cfg, credit={"gpu0": 10.0}).draining == {"a"}
    assert not decide(backlog_and_due_newcomer(), G24, cfg, credit={"gpu0": 9.9}).draining


def test_no_budget_without_credit_or_when_switched_off():
    cfg = PolicyConfig(max_wait_s=60, min_resident_s=30, swap_budget=None)
    assert decide(backlog_and_due_newcomer(), G24, cfg, credit={"gpu0": -50.0}).draining == {"a"}
    assert decide(backlog_and_due_newcomer(), G24, CFG).draining == {"a"}


def test_idle_models_go_without_credit():
    ms = [resident("a", 16, idle_s=5.0, load_s=8.0), cold("b", 14, queued=1, oldest_wait_s=1, load_s=5.0)]
    d = decide(ms, G24, CFG, credit={"gpu0": -30.0})
    assert d.targets["a"] == 0 and d.actions[0].text.startswith("evict a (idle 5 s) for b")


def test_higher_priority_goes_at_once_when_affordable_else_when_due():
    urgent = dict(max_priority=10)
    ms = lambda wait: [resident("a", 16, queued=40, in_flight=1, oldest_wait_s=300, service_s=2.0, load_s=8.0),  # noqa: E731
                       cold("b", 14, queued=1, oldest_wait_s=wait, load_s=5.0, **urgent)]
    assert decide(ms(1), G24, CFG, credit={"gpu0": 20.0}).draining == {"a"}
    assert not decide(ms(1), G24, CFG, credit={"gpu0": 0.0}).draining
    # Due: 52 s waited + one job of a to drain (2 s, counted 1.5x) + b's load (5 s) reaches 60 s.
    assert not decide(ms(51.9), G24, CFG, credit={"gpu0": 0.0}).draining
    assert decide(ms(52.0), G24, CFG, credit={"gpu0": 0.0}).draining == {"a"}


def test_due_counts_the_next_job_of_a_busy_resident_even_between_jobs():
    # a has queued work but nothing in flight at this instant: it will start a job any moment.
    ms = [resident("a", 16, queued=5, oldest_wait_s=2, service_s=8.0, load_s=8.0),
          cold("b", 14, queued=1, oldest_wait_s=43.0, load_s=5.0)]
    assert decide(ms, G24, CFG).targets["a"] == 0  # 43 + 1.5 x 8 + 5 >= 60


def test_a_model_just_swapped_out_does_not_take_back_the_room_it_made():
    # a was evicted for b a moment ago: both cold with work, a's jobs older; b has waited longer
    # for the GPU, so b loads.
    ms = [cold("a", 16, queued=30, oldest_wait_s=200, cold_s=0.5), cold("b", 14, queued=2, oldest_wait_s=60)]
    d = decide(ms, G24, CFG)
    assert d.targets == {"a": 0, "b": 1}
    # Priority still comes first.
    ms = [cold("a", 16, queued=30, oldest_wait_s=200, cold_s=0.5, max_priority=5), cold("b", 14, queued=2, oldest_wait_s=60)]
    assert decide(ms, G24, CFG).targets == {"a": 1, "b": 0}


def test_two_swaps_in_one_decision_cannot_spend_the_same_credit():
    """Two due models, two busy residents on one 48 GB GPU, credit for one round trip (a full
    bucket, 12 s; each swap costs the newcomer's load and the victim's reload, 10 s): one swap."""
    g48 = [Gpu("gpu0", 48)]
    ms = [resident("x", 24, queued=5, in_flight=1, load_s=5.0), resident("y", 24, queued=5, in_flight=1, load_s=5.0),
          cold("w1", 24, queued=1, oldest_wait_s=59, load_s=5.0), cold("w2", 24, queued=1, oldest_wait_s=58, load_s=5.0)]
    d = decide(ms, g48, CFG, credit={"gpu0": 12.0})
    assert len(d.draining) == 1 and [a.for_model for a in d.actions if a.verb is Verb.drain] == ["w1"]
    assert any(a.verb is Verb.wait and a.model == "w2" and "swap budget" in a.text for a in d.actions)
    # With credit for both, both go.
    assert d.draining != decide(ms, g48, CFG, credit=None).draining and len(decide(ms, g48, CFG, credit=None).draining) == 2


def test_a_starving_model_goes_first_whatever_the_priorities_and_the_budget():
    cfg = PolicyConfig(idle_ttl_s=300, max_wait_s=60, min_resident_s=30, starvation_s=600)
    ms = lambda wait: [resident("a", 16, queued=40, in_flight=1, oldest_wait_s=900, max_priority=10, load_s=8.0),  # noqa: E731
                       cold("b", 14, queued=1, oldest_wait_s=wait, load_s=5.0, max_priority=10),
                       cold("c", 14, queued=1, oldest_wait_s=599, load_s=5.0)]
    # Spent credit, outranked: c waits while it is under the bound (b, higher priority, goes first).
    d = decide(ms(100), G24, cfg, credit={"gpu0": -5.0})
    assert "c" not in {a.for_model for a in d.actions} and not d.draining
    cs = [resident("a", 16, queued=40, in_flight=1, oldest_wait_s=900, max_priority=10, load_s=8.0),
          cold("b", 14, queued=1, oldest_wait_s=100, load_s=5.0, max_priority=10),
          cold("c", 14, queued=1, oldest_wait_s=600, load_s=5.0)]
    d = decide(cs, G24, cfg, credit={"gpu0": -5.0})
    assert d.draining == {"a"} and [a.for_model for a in d.actions if a.verb is Verb.drain] == ["c"]
    assert "starving" in d.reasons[0]


def test_a_model_just_loaded_starts_its_first_job_before_anyone_displaces_it():
    ms = [resident("a", 16, queued=3, resident_s=0.0, service_s=2.0, load_s=8.0),
          cold("b", 14, queued=1, oldest_wait_s=300, load_s=5.0, max_priority=10)]
    assert decide(ms, G24, CFG).targets["a"] == 1 and not decide(ms, G24, CFG).draining
    ms[0] = resident("a", 16, queued=2, in_flight=1, resident_s=0.5, service_s=2.0, load_s=8.0)
    assert decide(ms, G24, CFG).draining == {"a"}


def test_room_is_made_without_needless_evictions():
    """whisper (4 GB, idle longest) is picked first, but llm alone frees enough for sdxl: only llm
    goes (evicting whisper too would cost its reload later for nothing)."""
    ms = [resident("whisper", 4, idle_s=160.0), resident("llm", 18, idle_s=1.0), cold("sdxl", 10, queued=3, oldest_wait_s=5)]
    d = decide(ms, G24, CFG)
    assert [(a.verb, a.model) for a in d.actions if a.acting] == [(Verb.evict, "llm")]
    assert d.targets == {"whisper": 1, "llm": 0, "sdxl": 0}


def test_two_models_resident_on_one_gpu_both_get_work():
    """The dispatcher runs both (the GPU time-slices them: docs/arbiter.md, 'A GPU shares its
    compute'): neither is held back for the other."""
    ms = [resident("sdxl", 16, queued=3, in_flight=1), resident("whisper", 4, queued=2, in_flight=1)]
    d = decide(ms, G24, CFG)
    assert all(d.dispatchable(m) for m in ms) and not d.draining
