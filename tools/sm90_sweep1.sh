Q=tools/sm90_quick.sh
A="bm=128,bn=128,w=12,s=2"; B="bm=128,bn=64,w=12,s=2,minblocks=2"; Cc="bm=192,bn=128,w=16,s=2"; D="bm=64,bn=64,w=8,s=2,minblocks=2"; E="bm=128,bn=64,w=12,s=3"; F="bm=192,bn=64,w=16,s=2"
bash $Q "b=2,h=4,n=4096,d=32,r=8" $A $B $Cc $D $E $F
bash $Q "b=2,h=4,n=16384,d=32,r=8" $A $B $Cc $D $F
bash $Q "b=1,h=50,n=8192,d=32,r=2,mask=causal" $A $B $Cc $D $F
bash $Q "b=256,h=4,n=384,d=32,r=16" $A $B $Cc $D $F
bash $Q "b=4,h=16,n=4096,d=64,r=16" $A $B $Cc "bm=128,bn=192,w=12,s=2" $F
bash $Q "b=2,h=16,n=8192,d=128,r=16" $A "bm=128,bn=64,w=12,s=2" "bm=128,bn=192,w=12,s=2" "bm=128,bn=128,w=12,s=3"
bash $Q "b=2,h=16,n=8192,d=128,r=16,mask=causal" $A "bm=128,bn=64,w=12,s=2" "bm=128,bn=192,w=12,s=2"
