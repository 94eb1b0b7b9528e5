from omniserve.cli import main

main()
