"""One claimed run of one job, split by idea; `services.generator.worker` claims and hands over."""
