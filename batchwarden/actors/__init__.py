"""Leader-only actors: submitter, poller, item fetcher, callback sender, reaper."""
