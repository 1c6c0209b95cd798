"""Continuous-time diffusion on the log-SNR scale: schedules, conversions and losses (pure functions)."""
