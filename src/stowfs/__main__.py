from stowfs.cli import main

main()
