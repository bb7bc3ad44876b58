"""``shelfq demo``: the main job on the embedded broker (``run``) and its report (``report``)."""
