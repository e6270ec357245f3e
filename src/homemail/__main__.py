from homemail.cli import main

main()
