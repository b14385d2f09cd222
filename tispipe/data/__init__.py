"""Preference data in: the file readers and formats, the one tokenization, HH transcripts, held-out splits, the toy task."""
