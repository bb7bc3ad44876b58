"""What a shop frontend uses to talk to shelfq (``ShopClient``), and the log replay tool."""
