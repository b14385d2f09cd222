"""Stage two, `tispipe train`: a policy on the weight shards; and `tispipe reward-model`."""
