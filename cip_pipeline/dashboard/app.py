"""The dashboard's entry point, the script Streamlit runs (`cip dashboard` starts it): the
page navigation, and a frame that turns an unreadable warehouse into a clear message and the
pipeline writing it into a "refreshing" notice over the last good data."""

from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from cip_pipeline.dashboard import data, ui
from cip_pipeline.dashboard.views import PAGES

VIEWS = Path(__file__).resolve().parent / "views"
REFRESHING = "Refreshing"
log = logging.getLogger("cip_pipeline.dashboard")


def pages() -> list[st.Page]:
    return [
        st.Page(VIEWS / file, title=title, icon=icon, url_path=path or None, default=not path)
        for file, title, icon, path in PAGES
    ]


def show_unavailable(exc: data.Unavailable) -> None:
    if isinstance(exc, data.WarehouseBusy):
        st.warning(f"**{exc.headline}.** {exc.detail}", icon=":material/sync:")
    elif isinstance(exc, data.WarehouseMissing | data.NotBuilt):
        st.info(f"**{exc.headline}.** {exc.detail}", icon=":material/database:")
    else:
        st.error(f"**{exc.headline}.** {exc.detail}", icon=":material/error:")


def main() -> None:
    st.set_page_config(
        page_title="Customer Intelligence Platform",
        page_icon=":material/insights:",
        layout="wide",
    )
    page = st.navigation(pages())
    st.sidebar.caption(f"Warehouse: `{data.warehouse_path()}` (read-only)")
    data.reset_stale()
    notice = st.empty()  # filled once the page knows whether it showed older results
    try:
        page.run()
    except data.Unavailable as exc:
        show_unavailable(exc)
    except Exception as exc:
        # Streamlit's own control flow (stop, rerun) is a BaseException and passes through.
        log.exception("page %s failed", page.title)
        st.error(
            f"This page could not be drawn ({type(exc).__name__}: {str(exc)[:300]}). The "
            "details are in the dashboard's log.",
            icon=":material/error:",
        )
    since = data.stale_since()
    if since is not None:
        notice.warning(
            f"**{REFRESHING}:** a pipeline run is writing the warehouse. Showing the data read "
            f"at {ui.when(since)}; reload the page once the run has finished.",
            icon=":material/sync:",
        )
    data.warm_up()


if __name__ == "__main__":  # Streamlit runs this file as __main__
    main()
