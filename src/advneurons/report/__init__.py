"""What a run shows: Markdown/HTML tables, figures in one style, the findings page, and the report's
landing page."""
