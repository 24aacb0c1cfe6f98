"""Top floor: the Dagster definitions and the `lakeloop` command line. Imported by nothing else."""
