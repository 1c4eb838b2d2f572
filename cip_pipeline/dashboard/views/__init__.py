"""The dashboard's pages, one module each; Streamlit runs them as scripts (`__main__`)."""

# (file, title, icon, url path) in navigation order; the page without a path is Home.
PAGES = [
    ("home.py", "Home", ":material/home:", ""),
    ("explorer.py", "Data explorer", ":material/table_chart:", "explorer"),
    ("optimization.py", "Optimization", ":material/compress:", "optimization"),
    ("executive.py", "Executive overview", ":material/monitoring:", "executive"),
    ("users.py", "User intelligence", ":material/group:", "users"),
    ("experiments.py", "Experiment lab", ":material/science:", "experiments"),
    ("ml.py", "ML engine", ":material/model_training:", "ml"),
]
