from prefixgate.cli import main

main()
