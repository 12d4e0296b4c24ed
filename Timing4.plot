set output 'Timing4.svg
set terminal svg
set multiplot
set grid
set title "Clients scheduling latency"
set xlabel "audio cycles"
set ylabel "usec"
plot "/tmp/tmp.qq4k2Gec0O/prof.log" using 9 title "overdub/31" with lines, "/tmp/tmp.qq4k2Gec0O/prof.log" using 17 title "latsrc/33" with lines
unset multiplot
unset output
