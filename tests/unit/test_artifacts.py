"""The local artifact store."""

import pytest

from gpu_orchestrator.store.artifacts import ArtifactError, ArtifactStore, http_path, safe_name


def test_put_read_and_paths(tmp_path):
    st = ArtifactStore(tmp_path)
    uri = st.put(b"RIFF....", name="my clip (1).wav", prefix="uploads")
    assert uri.startswith("artifact://uploads/") and uri.endswith("/my_clip_1_.wav")
    assert st.exists(uri) and st.read(uri) == b"RIFF...."
    assert st.local_path(uri).read_bytes() == b"RIFF...."
    assert st.content_type(uri) == "audio/x-wav" or st.content_type(uri).startswith("audio/")
    assert http_path(uri) == "/v1/artifacts/" + uri[len("artifact://"):]
    assert not list(tmp_path.rglob("*.part"))  # written atomically


def test_rejects_bad_uris(tmp_path):
    st = ArtifactStore(tmp_path)
    for bad in ("http://x/a.wav", "artifact://../etc/passwd", "artifact:///abs"):
        with pytest.raises(ArtifactError):
            st.read(bad)
    with pytest.raises(ArtifactError, match="not found"):
        st.read("artifact://uploads/none/x.wav")


def test_safe_name():
    assert safe_name("../../etc/passwd") == "passwd" and safe_name("") == "file" and safe_name("a b.wav") == "a_b.wav"
