"""The default model's corpus: which Debian packages, which files in them, under which licence.

Each source is (name, package, licence, kind, globs, excludes). kind: "code" (Python source: kept verbatim,
marked {"code": true} so tokenize-corpus may apply fill-in-the-middle), "rst" (reStructuredText, kept as text
with directive-only lines dropped), "pod" (Perl's POD, markup stripped), "html" (tags stripped). Globs are
relative to the root the package was unpacked into (dpkg-deb -x), so the builder reads nothing else of the
machine; "common-licenses" is the one exception: base-files is on every Debian system.

Licences are read from each package's debian/copyright (checked by hand on Debian 12, 2026-12-02); every one
is a free licence (PSF, BSD-3-Clause, GPL-2/GPL-2+/GPL-3+, GPL-1+ or Artistic; Debian's handbook is
GPL-2+ or CC-BY-SA-3.0). No GFDL text with invariant sections is included.
"""

SOURCES = [
    # name, Debian package, licence, kind, include globs, exclude substrings
    ("python-stdlib", "libpython3.11-stdlib", "PSF-2.0", "code",
     ["usr/lib/python3.11/**/*.py"], ["/site-packages/", "/dist-packages/", "/lib2to3/tests/data/"]),
    ("python-stdlib-core", "libpython3.11-minimal", "PSF-2.0", "code",
     ["usr/lib/python3.11/**/*.py"], []),
    ("python-docs", "python3.11-doc", "PSF-2.0", "rst",
     ["usr/share/doc/python3.11/html/_sources/**/*.rst.txt"], ["/whatsnew/changelog"]),
    ("sympy", "python3-sympy", "BSD-3-Clause", "code",
     ["usr/lib/python3/dist-packages/sympy/**/*.py"], ["/tests/"]),
    ("numpy", "python3-numpy", "BSD-3-Clause", "code",
     ["usr/lib/python3/dist-packages/numpy/**/*.py"], ["/tests/"]),
    ("django", "python3-django", "BSD-3-Clause", "code",
     ["usr/lib/python3/dist-packages/django/**/*.py"], ["/locale/"]),
    ("scipy", "python3-scipy", "BSD-3-Clause", "code",
     ["usr/lib/python3/dist-packages/scipy/**/*.py"], ["/tests/"]),
    ("pandas", "python3-pandas", "BSD-3-Clause", "code",
     ["usr/lib/python3/dist-packages/pandas/**/*.py"], ["/tests/"]),
    ("perl-modules", "perl-modules-5.36", "GPL-1.0-or-later OR Artistic-1.0-Perl", "code",
     ["usr/share/perl/5.36.0/**/*.pm", "usr/share/perl/5.36.0/**/*.pl"], ["/unicore/"]),
    ("django-docs", "python-django-doc", "BSD-3-Clause", "html",
     ["usr/share/doc/python-django-doc/html/**/*.html"],
     ["/_modules/", "/genindex", "/search.html", "/py-modindex", "/_static/"]),
    ("sympy-docs", "python-sympy-doc", "BSD-3-Clause", "rst",
     ["usr/share/doc/python-sympy-doc/html/_sources/**/*.rst.txt"], []),
    ("linux-docs", "linux-doc-6.1", "GPL-2.0", "rst",
     ["usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz",
      "usr/share/doc/linux-doc-6.1/Documentation/**/*.txt.gz"], ["/translations/"]),
    ("perl-docs", "perl-doc", "GPL-1.0-or-later OR Artistic-1.0-Perl", "pod",
     ["usr/share/perl/5.36/pod/*.pod", "usr/share/perl/5.36/pod/*.pod.gz",
      "usr/share/perl/5.36.0/pod/*.pod", "usr/share/perl/5.36.0/pod/*.pod.gz"], []),
    ("debian-handbook", "debian-handbook", "GPL-2.0-or-later OR CC-BY-SA-3.0", "html",
     ["usr/share/doc/debian-handbook/html/en-US/*.html"], []),
    ("debian-reference", "debian-reference-en", "GPL-2.0-or-later", "html",
     ["usr/share/debian-reference/*.en.html"], []),
    ("debian-faq", "debian-faq", "GPL-2.0-or-later", "html",
     ["usr/share/doc/debian/FAQ/*.en.html"], []),
    ("bash-manual", "bash-doc", "GPL-3.0-or-later", "html",
     ["usr/share/doc/bash/bash.html", "usr/share/doc/bash/bashref.html"], []),
    ("debian-policy", "debian-policy", "GPL-2.0-or-later", "text",
     ["usr/share/doc/debian-policy/*.txt.gz"], []),
    ("developers-reference", "developers-reference", "GPL-2.0", "html",
     ["usr/share/developers-reference/*.html"], ["/index.html", "/search.html", "/genindex.html"]),
    ("debian-doc", "doc-debian", "GPL-2.0-or-later", "text",
     ["usr/share/doc/debian/*.txt", "usr/share/doc/debian/*.txt.gz"], []),
    ("common-licenses", "base-files", "the licences' own terms (verbatim copying permitted)", "text",
     ["/usr/share/common-licenses/*"], []),
]

PACKAGES = sorted({s[1] for s in SOURCES if s[1] != "base-files"})
