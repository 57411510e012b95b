"""Personalisation and renewal of CPS cards: the layer that joins the CA (``pki.ca``) and the
card middleware (``pki.cards``). Neither of those imports this package or each other."""
