"""The Reflex user interface: pages, states and the page shell."""
