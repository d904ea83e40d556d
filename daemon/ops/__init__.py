"""The daemon as a service: systemd notify, the watchdog, metrics and GC tuning."""
