"""Stage one, `tispipe estimate`: build pi+/pi-, score every response token, write the weight shards; and `tispipe inspect`, which shows them."""
