from kerasssl.cli import main

main()
