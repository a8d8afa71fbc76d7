#!/usr/bin/env python3
"""The raw client that confirmd's SMTP send is measured against: Python's smtplib sending N emails over one persistent connection.

    python3 benches/raw_smtp.py --port 1025 --emails 200

Prints the per-email time (p50 and mean) of `sendmail` in a loop: the least a client on this
machine pays per email to the catcher, to set beside confirmd's sync-mode send time
(`confirmd_smtp_send_duration_seconds` sum / count in GET /metrics). Standard library only.
"""

import argparse
import smtplib
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1025)
    parser.add_argument("--emails", type=int, default=200)
    args = parser.parse_args()
    # About the size of confirmd's confirmation email (text and HTML parts, ~2 KB).
    body = ("Hi,\r\n\r\nConfirm your address: http://127.0.0.1:3000/confirm?token=" + "A" * 43
            + "\r\n" + "x" * 70 + "\r\n") * 12
    message = ("From: confirmd <noreply@example.com>\r\nTo: raw@example.com\r\n"
               "Subject: Confirm your email address\r\n\r\n" + body)
    client = smtplib.SMTP(args.host, args.port)
    client.ehlo()
    times = []
    for i in range(args.emails):
        started = time.perf_counter()
        client.sendmail("noreply@example.com", [f"raw{i}@example.com"], message)
        times.append((time.perf_counter() - started) * 1000)
    client.quit()
    times.sort()
    print(f"smtplib, one persistent connection, {args.emails} emails: "
          f"p50 {times[len(times) // 2]:.2f} ms, mean {statistics.fmean(times):.2f} ms")


if __name__ == "__main__":
    main()
