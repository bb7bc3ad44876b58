"""The command line: ``shelfq COMMAND`` (``main``), with the gate's and the model operator's commands
in modules of their own."""
