set output 'Timing3.svg
set terminal svg
set multiplot
set grid
set title "Clients end date"
set xlabel "audio cycles"
set ylabel "usec"
plot "/tmp/tmp.qq4k2Gec0O/prof.log" using 1 title "Audio period" with lines, "/tmp/tmp.qq4k2Gec0O/prof.log" using 8 title "overdub/31" with lines, "/tmp/tmp.qq4k2Gec0O/prof.log" using 16 title "latsrc/33" with lines
unset multiplot
unset output
