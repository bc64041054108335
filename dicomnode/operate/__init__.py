"""Operate: the commands, admin queries and screens, retention, metrics, logs and the demo."""
