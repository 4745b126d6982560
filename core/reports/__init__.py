"""Reports: the benchmark runner and its results files (bench), Markdown + HTML reports
(html), the demo index (index), demo reports (demo) and progress bars (progress)."""
