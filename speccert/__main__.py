from speccert.cli.app import run

run()
