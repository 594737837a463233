"""The bitc kernels' computes (TE and TVMScript), independent of how a target schedules them."""
