"""What a run shows a person: the Markdown and HTML reports and the episode videos."""
