from auditor.cli import app

app(prog_name="auditor")
