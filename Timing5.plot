set output 'Timing5.svg
set terminal svg
set multiplot
set grid
set title "Clients duration"
set xlabel "audio cycles"
set ylabel "usec"
plot "/tmp/tmp.qq4k2Gec0O/prof.log" using 10 title "overdub/31" with lines, "/tmp/tmp.qq4k2Gec0O/prof.log" using 18 title "latsrc/33" with lines
unset multiplot
unset output
