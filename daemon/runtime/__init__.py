"""The running daemon: lifecycle, supervisors, agents, delivery."""
