"""One claimed run of one job, one idea per module: options and outcome, the ending, the
lanes (one per model) with their records in flight, one record's steps and calls, the
budget, batches and their writer, and the end. `services.generator.worker` claims a job
and hands it to `job_run.JobRun`."""
