"""Offline tools people run by hand (through ``python -m backend COMMAND``): export, quality report, convergence,
active-learning simulation, and the local Label Studio the demo and the tests start. Nothing here serves requests."""
