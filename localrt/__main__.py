from localrt.cli import main

main()
