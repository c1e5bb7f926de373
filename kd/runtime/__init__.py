"""The only place that imports ray, deepspeed or mlflow: jobs' runtime wiring."""
