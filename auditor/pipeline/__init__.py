"""The audit pipeline: stages from dataset to findings, checkpointed so a restart resumes."""
