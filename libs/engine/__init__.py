"""The training engine: schedules, trainers, the loop, evaluation, the run and its processes."""
