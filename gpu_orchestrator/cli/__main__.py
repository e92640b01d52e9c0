from gpu_orchestrator.cli import main

main()
