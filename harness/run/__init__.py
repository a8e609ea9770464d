"""Running an evaluation: the run's configuration and episodes, the episode runner and its worker,
the world-model mirror of each episode, the executors (local processes, Ray), the run folder."""
