from xdp_compute.cli.main import app

app(prog_name="xdp")
