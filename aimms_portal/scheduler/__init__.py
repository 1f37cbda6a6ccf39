"""The scheduler: the job queue, leader election, dispatch, reaping and state hooks.

An inner layer: services call it; it knows models, the database, launchers and
signals, never services, the API or the UI.
"""
