"""Studies that run the stages as jobs: experiment, contrast-study, weight-study; and the toy task's ideal pair."""
