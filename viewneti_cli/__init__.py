"""The command-line entry points: `viewneti` (the method), `viewneti-pipeline` (the Prefect pipeline) and the deploy step."""
