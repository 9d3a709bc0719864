"""Voices: the stored library, references from requests (uploads, URLs) and their transcripts."""
