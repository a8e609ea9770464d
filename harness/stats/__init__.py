"""Statistics over episode records: intervals, rater agreement, world model vs simulator."""
