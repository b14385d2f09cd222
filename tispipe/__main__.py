from tispipe.cli import main

main()
