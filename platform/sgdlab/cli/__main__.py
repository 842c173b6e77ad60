from sgdlab.cli.main import app

app(prog_name="sgdlab")
