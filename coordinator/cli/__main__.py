from coordinator.cli.commands import main

main()
