#!/bin/sh
# Rebuilds the files in this folder with software other than mailgate's own writers (see
# README.md here); tests/support/build_examples.py then puts them into rules/examples/.
# Needs Debian's libreoffice-writer-nogui, libreoffice-calc-nogui, qpdf, zip and p7zip-full,
# and pip's vendored distlib (for a real Windows executable). The output differs from run to run
# (LibreOffice and the archivers stamp times and ids), so the files are committed.
set -eu
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

office() {  # office TARGET FILE [INPUT FILTER]
    # A profile of its own: no clash with a LibreOffice already running, nothing left behind.
    libreoffice --headless "-env:UserInstallation=file://$work/profile" ${3:+"--infilter=$3"} \
        --convert-to "$1" --outdir "$work" "$2" >/dev/null
}
# Opened in Writer itself (not Writer/Web, which writes an HTML-flavoured .odt).
office odt:writer8 sources/letter.html "HTML (StarWriter)"
office "docx:MS Word 2007 XML" "$work/letter.odt"
office pdf:writer_pdf_Export "$work/letter.odt"
# Comma-separated, UTF-8 (76), from line 1; the card column stays text (it has spaces).
office "xlsx:Calc MS Excel 2007 XML" sources/customers.csv CSV:44,34,76,1
cp "$work/letter.odt" letter-libreoffice.odt
cp "$work/letter.docx" letter-libreoffice.docx
cp "$work/letter.pdf" letter-libreoffice.pdf
cp "$work/customers.xlsx" customers-libreoffice.xlsx

# A real Windows program: distlib's console launcher (PSF licence, licenses/), as pip ships it.
launcher=$(python3 -c 'import pip._vendor.distlib as d, pathlib; print(pathlib.Path(d.__file__).parent / "t32.exe")')
mkdir -p "$work/tree/tools" "$work/tree/photos" "$work/tree/lists"
cp "$launcher" "$work/tree/tools/cleanup.exe"
cp "$launcher" "$work/tree/photos/holiday.jpg"  # a program under a picture's name
cp sources/customers.csv "$work/tree/lists/customers.csv"
rm -f customers-infozip.zip tools-infozip.zip customers-p7zip.7z photos-p7zip.7z
# The program as a file attachment of LibreOffice's PDF, added by qpdf.
qpdf letter-libreoffice.pdf --add-attachment "$work/tree/tools/cleanup.exe" -- letter-exe-qpdf.pdf
(cd "$work/tree" && zip -q -X -9 "$OLDPWD/customers-infozip.zip" lists/customers.csv)
(cd "$work/tree" && zip -q -X -9 "$OLDPWD/tools-infozip.zip" tools/cleanup.exe)
(cd "$work/tree" && 7z a -bd -mx=9 "$OLDPWD/customers-p7zip.7z" lists/customers.csv >/dev/null)
(cd "$work/tree" && 7z a -bd -mx=9 "$OLDPWD/photos-p7zip.7z" photos/holiday.jpg >/dev/null)
