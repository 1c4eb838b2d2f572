"""The analytics dashboard (`cip dashboard`, the `dashboard` extra): Streamlit pages over the
warehouse, the model registry, the lake and the last benchmark report, read-only.

- `app.py`: the entry point Streamlit runs, the page navigation and the error frame.
- `data.py`: everything the pages read (the SQL is `cip_pipeline/sql/dashboard.sql`).
- `ui.py`: formatting and layout helpers shared by the pages.
- `views/`: one module per page.
- `launch.py`: `cip dashboard` and `cip dashboard --measure`.
"""
