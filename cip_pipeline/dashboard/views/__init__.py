"""The dashboard's pages, one module each; Streamlit runs them as scripts (`__main__`)."""
